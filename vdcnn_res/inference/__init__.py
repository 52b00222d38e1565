"""Using a trained model: model files (the only loader), the Predictor, ONNX, the prediction writer."""
