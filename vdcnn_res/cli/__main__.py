from vdcnn_res.cli import main

main()
