"""The search space of `vdcnn-res tune`: config keys with a range or a list of choices.

A space file is YAML, one entry per `vdcnn-res fit` config key (dotted, as on the command line):

    model.optim.lr: {low: 1.0e-4, high: 3.0e-3, log: true}   # float, sampled on a log scale
    data.max_length: {low: 256, high: 1024, step: 256}        # integers (low and high are ints)
    model.arch.depth: {choices: [9, 17]}                      # categorical
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vdcnn_res.errors import MissingFileError, UserError

# The recipe's few knobs that matter most (docs/results.md), in ranges that train on CPU and GPU.
DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "model.optim.lr": {"low": 1e-4, "high": 3e-3, "log": True},
    "model.optim.weight_decay": {"low": 1e-3, "high": 0.1, "log": True},
    "model.label_smoothing": {"low": 0.0, "high": 0.2},
    "model.arch.dropout": {"low": 0.0, "high": 0.5},
    "model.arch.depth": {"choices": [9, 17]},
    # The n-gram bag's lr multiplier (the text default's bag; no effect on a model without one).
    "model.optim.ngram_lr_scale": {"low": 3.0, "high": 30.0, "log": True},
    # How much of each text the model reads: what long documents need most (docs/results.md §11);
    # free where texts are shorter (batches pad to their longest text).
    "data.max_length": {"choices": [512, 1024, 2048]},
}

# Keys the tuner sets itself for every trial: a space may not search them.
RESERVED = ("trainer.default_root_dir", "checkpoint.dirpath", "data.test", "ckpt_path", "config",
            "trainer.devices", "trainer.num_nodes")  # fmt: skip
_FIELDS = {"low", "high", "log", "step", "choices"}


@dataclass(frozen=True)
class Param:
    """One searched key: a numeric range (`low`..`high`, `log`, `step`) or `choices`."""

    key: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] | None = None

    @property
    def is_int(self) -> bool:
        return self.choices is None and all(isinstance(v, int) and not isinstance(v, bool) for v in (self.low, self.high))

    def suggest(self, trial: Any) -> Any:
        """Draw this key's value for an Optuna trial."""
        if self.choices is not None:
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.is_int:
            return trial.suggest_int(self.key, self.low, self.high, step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), step=self.step, log=self.log)

    def contains(self, value: Any) -> bool:
        """Whether `value` is one this parameter can take (in its choices, or in its range and on its step)."""
        if self.choices is not None:
            return any(_same(value, c) for c in self.choices)
        if not _number(value) or not self.low <= value <= self.high:
            return False
        if self.is_int and not (isinstance(value, int) and not isinstance(value, bool)):
            return False
        if self.step:
            steps = (value - self.low) / self.step
            return math.isclose(steps, round(steps), abs_tol=1e-9)
        return True

    def describe(self) -> str:
        if self.choices is not None:
            return f"{self.key} in {list(self.choices)}"
        scale = ", log" if self.log else (f", step {self.step}" if self.step else "")
        return f"{self.key} in [{self.low:g}, {self.high:g}{scale}]"


def _same(a: Any, b: Any) -> bool:
    """Equal values of one kind: 0 and 0.0 are the same choice, True and 1 are not."""
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_space(entries: Any, source: str = "the search space") -> list[Param]:
    """Validate a mapping of key -> range/choices; every mistake is one UserError line naming the key."""
    if not isinstance(entries, dict) or not entries:
        raise UserError(f"{source} must map config keys to ranges, e.g. model.optim.lr: {{low: 1.0e-4, high: 3.0e-3, log: true}}")
    params = []
    for key, spec in entries.items():
        where = f"{source}: {key}"
        if not isinstance(key, str) or not key or key.startswith("-"):
            raise UserError(f"{source}: {key!r} is not a config key (write it dotted, without dashes: model.optim.lr)")
        if key in RESERVED or key.startswith("trainer.callbacks"):
            raise UserError(f"{where} is set by vdcnn-res tune itself and cannot be searched")
        if not isinstance(spec, dict):
            raise UserError(f"{where} needs {{low: .., high: ..}} or {{choices: [..]}}, got {spec!r}")
        unknown = set(spec) - _FIELDS
        if unknown:
            raise UserError(f"{where}: unknown field(s) {sorted(unknown)}; use low, high, log, step or choices")
        if "choices" in spec:
            choices = spec["choices"]
            if set(spec) != {"choices"}:
                raise UserError(f"{where}: give either choices or low/high, not both")
            if not isinstance(choices, list) or not choices:
                raise UserError(f"{where}: choices must be a non-empty list")
            if not all(c is None or isinstance(c, (bool, int, float, str)) for c in choices):
                raise UserError(f"{where}: choices must be numbers, strings, booleans or null, got {choices!r}")
            if len({json.dumps(c) for c in choices}) != len(choices):
                raise UserError(f"{where}: choices repeat a value: {choices!r}")
            params.append(Param(key, choices=tuple(choices)))
            continue
        low, high = spec.get("low"), spec.get("high")
        if not (_number(low) and _number(high)):
            raise UserError(f"{where}: low and high must both be numbers, got {low!r} and {high!r}")
        if not low < high:
            raise UserError(f"{where}: empty range: low ({low}) must be below high ({high})")
        log, step = spec.get("log", False), spec.get("step")
        if not isinstance(log, bool):
            raise UserError(f"{where}: log must be true or false, got {log!r}")
        if log and low <= 0:
            raise UserError(f"{where}: a log range needs low > 0, got {low}")
        if step is not None and (not _number(step) or step <= 0 or log):
            raise UserError(f"{where}: step must be a positive number, and cannot be combined with log")
        params.append(Param(key, low=low, high=high, log=log, step=step))
    return params


def load_space(path: str | None) -> list[Param]:
    """The space of a YAML file, or DEFAULT_SPACE when no file is given."""
    if path is None:
        return parse_space(DEFAULT_SPACE, "the default search space")
    import yaml

    file = Path(path)
    if not file.is_file():
        raise MissingFileError(f"--space {path!r}: no such file")
    try:
        entries = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise UserError(f"--space {path!r} is not valid YAML: {str(err).splitlines()[0]}") from None
    return parse_space(entries, f"--space {path}")


def check_keys(params: list[Param], known: Any) -> None:
    """Refuse keys the `fit` config does not have (`known` supports `in` with dotted keys)."""
    for param in params:
        if param.key not in known:
            raise UserError(
                f"the search space names {param.key!r}, which is not a `vdcnn-res fit` config key "
                "(see `vdcnn-res fit --print_config`)"
            )


def base_values(params: list[Param], config: Any) -> dict[str, Any]:
    """The base config's own value of each searched key, where the space contains it.

    The search tries these first, so that a short budget cannot end worse (on validation) than
    the recipe it started from. Keys whose base value lies outside the space (or is a word such
    as `lr: auto`) are left to the sampler.
    """
    values = {}
    for param in params:
        value = config.get(param.key)
        if isinstance(value, int) and not isinstance(value, bool) and not param.is_int and param.choices is None:
            value = float(value)
        if param.contains(value):
            if param.choices is not None:  # the choice as the space spells it (0 for a base 0.0)
                value = next(c for c in param.choices if _same(value, c))
            values[param.key] = value
    return values


def default_space_for(params: list[Param], config: Any) -> list[Param]:
    """The default space without the keys the base config leaves null: null there means "all" or
    "not used" (a series recipe reads every value: `data.max_length: null`), which no range holds."""
    return [p for p in params if config.get(p.key) is not None]


def fingerprint(params: list[Param]) -> str:
    """A canonical text of the space, stored with the study to refuse resuming with another one."""
    return json.dumps([asdict(p) for p in params], sort_keys=True, default=list)


def as_arg(key: str, value: Any) -> str:
    """`--key=value` as the fit command line spells it."""
    if isinstance(value, bool):
        text = str(value).lower()
    elif value is None:
        text = "null"
    elif isinstance(value, float):
        text = repr(value)
    else:
        text = str(value)
    return f"--{key}={text}"
