"""The one table of parameters: names, types, defaults, ranges, help and the stage each one
feeds. The library checks, the CLI flags (``cli/main.py`` generates them) and ``run.json``
all come from here, so a choice or a default is written once.

Every violated constraint becomes one sentence naming the parameter, e.g. "the 'gamma'
parameter must be a number ≥ 0; got -1." (scikit-learn's generated messages).
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from d2scale.errors import D2ScaleError

EMBEDDING_MODELS = ("l14", "b32")
FEATURE_TYPES = ("image", "text", "image_text")
SYNTH_MEMBERS = ("l14_img", "l14_txt", "b32_img", "b32_txt")
SYNTH_LAYOUTS = ("f16-compressed", "f32-stored", "f16-stored", "f32-compressed")  # "mixed": in turn
MAX_SEED = 2**32 - 1
MAX_INT = 2**62  # no integer parameter means more; larger ones overflow int64 downstream
TOO_LARGE = "an integer of at most 2^62 in size"


def too_large(value: int) -> bool:
    """Whether an integer is beyond any parameter's meaning (:data:`MAX_INT`)."""
    return abs(value) > MAX_INT


DEVICES = ("auto", "cpu", "cuda")  # every command's --device
MIN_MEMORY_LIMIT = 64 * 2**20
RANKING_FRACTION = 0.3  # kept when no fraction is given and the last step ranks (see chain.py)


@dataclass(frozen=True)
class Param:
    """One parameter. ``kind`` picks the parser/checker; ``stage`` is the stage of ``select``
    whose result depends on it (``None``: it never changes a result)."""

    name: str
    kind: str  # int, float, str, bool, choice, choices (a subset), fractions, bytes, path
    default: Any
    help: str
    group: str
    commands: tuple[str, ...]
    stage: str | None = None
    choices: tuple[str, ...] = ()
    low: float | None = None  # inclusive unless low_open
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    optional: bool = False  # None is allowed (and is the default)
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def parse(self, text: str) -> Any:
        """A command-line string → the checked value (one-sentence error otherwise)."""
        if self.kind == "int":
            value: Any = _number(self, text, int)
        elif self.kind == "float":
            value = _number(self, text, float)
        elif self.kind == "fractions":
            value = parse_fractions(text)
        elif self.kind == "bytes":
            value = parse_bytes(text)
        elif self.kind == "choices":
            value = tuple(item.strip() for item in text.split(","))
        elif self.kind == "step":
            parse_step(text)
            value = text
        else:
            value = text
        return self.check(value)

    def check(self, value: Any) -> Any:
        """``value`` if it satisfies the constraints, else :class:`D2ScaleError`."""
        if value is None and self.optional:
            return None
        if self.kind == "choice":
            if value not in self.choices:
                self._fail(f"one of {', '.join(self.choices)}", value)
        elif self.kind == "choices":
            if not isinstance(value, (list, tuple)) or not value:
                self._fail(f"some of {', '.join(self.choices)}", value)
            for item in value:
                if item not in self.choices:
                    self._fail(f"some of {', '.join(self.choices)}", item)
        elif self.kind in ("int", "bytes"):
            if isinstance(value, bool) or not isinstance(value, int) or not self._in_range(value):
                self._fail(f"an integer {self.range_text()}".rstrip(), value)
            if too_large(value):
                self._fail(TOO_LARGE, value)
        elif self.kind == "float":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not (ok and math.isfinite(value) and self._in_range(value)):
                self._fail(f"a finite number {self.range_text()}".rstrip(), value)
        elif self.kind == "fractions":
            _check_fractions(value)
        elif self.kind == "step":
            parse_step(value)
        elif self.kind == "steps":
            if not isinstance(value, (list, tuple)):
                self._fail("a list of steps", value)
            for text in value:
                parse_step(text)
        elif self.kind in ("str", "path"):
            if not isinstance(value, str) or not value.strip():
                self._fail("a non-empty string", value)
        elif self.kind == "bool" and not isinstance(value, bool):
            self._fail("true or false", value)
        return value

    def _in_range(self, v: float) -> bool:
        if self.low is not None and (v <= self.low if self.low_open else v < self.low):
            return False
        return self.high is None or (v < self.high if self.high_open else v <= self.high)

    def range_text(self) -> str:
        """``"in (0, 1]"``, ``"≥ 1"`` or ``""`` (no range)."""
        if self.low is not None and self.high is not None:
            close = ")" if self.high_open else "]"
            return f"in {'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}{close}"
        if self.low is not None:
            return f"{'>' if self.low_open else '≥'} {_num(self.low)}"
        return ""

    def _fail(self, what: str, value: Any) -> None:
        raise D2ScaleError(f"the {self.name!r} parameter must be {what}; got {value!r}.")


def check_option(p: Param, value: Any) -> Any:
    """``value`` checked against ``p``, the error naming its flag as the vision and web commands
    word it ("--fraction must be in (0, 1]; got 1.5.")."""
    if value is None and p.optional:
        return value
    rng = p.range_text()
    if p.kind == "choice":
        ok, what = value in p.choices, f"one of {', '.join(p.choices)}"
    elif p.kind in ("int", "float"):
        number = not isinstance(value, bool) and (
            isinstance(value, numbers.Integral)
            if p.kind == "int"
            else isinstance(value, numbers.Real) and math.isfinite(value)
        )
        ok = number and p._in_range(value)
        kind = "an integer" if p.kind == "int" else "a finite number"
        what = rng if number else f"{kind} {rng}".rstrip()  # "≥ 1; got 0", "an integer ≥ 1; …"
        if ok and p.kind == "int" and too_large(value):
            ok, what = False, TOO_LARGE
    else:
        return p.check(value)
    if not ok:
        raise D2ScaleError(f"{p.flag} must be {what}; got {value!r}.")
    return value


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def _number(p: Param, text: str, cast: type) -> Any:
    try:
        return cast(text)
    except ValueError:
        kind = "an integer" if cast is int else "a number"
        raise D2ScaleError(f"the {p.name!r} parameter must be {kind}; got {text!r}.") from None


_SEL, _GR, _MP, _SY = "select", "graph", "mp", "synth"

PARAMS: dict[str, Param] = {
    p.name: p
    for p in [
        # --- pool (sources) ------------------------------------------------------------------
        Param("metadata_dir", "path", None, "pool directory or fsspec URL of <name>.parquet + "
              "<name>.npz pairs (default: the built-in 100k-row sample pool)", "pool",
              (_SEL, _GR), stage="read", optional=True, metavar="DIR"),
        Param("embedding_model", "str", "l14", "embedding npz members: l14 (768-d), b32 "
              "(512-d), or the prefix `d2scale embed` wrote for another model (its dimension "
              "is read from the files)", "pool", (_SEL, _GR), stage="graph", metavar="PREFIX"),
        Param("feature_type", "choice", "image_text", "image, text, or image_text (the two "
              "unit vectors concatenated)", "pool", (_SEL, _GR), stage="graph",
              choices=FEATURE_TYPES),
        Param("score_column", "str", None, "score column (default "
              "clip_<embedding-model>_similarity_score)", "pool", (_SEL,), stage="read",
              optional=True, metavar="NAME"),
        Param("score_shift", "float", 0.115, "added to every score (0.115 as in the DataComp "
              "reference script)", "pool", (_SEL,), stage="read"),
        # --- kNN graph -----------------------------------------------------------------------
        Param("n_neighbors", "int", 5, "k of the kNN graph", "kNN graph", (_SEL, _GR),
              stage="graph", low=1),
        Param("index", "choice", "auto", "exact flat search or faiss IVF (auto: by pool size)",
              "kNN graph", (_SEL, _GR), stage="graph", choices=("auto", "exact", "ivf")),
        Param("recall", "float", 0.95, "IVF recall@k target used to tune nprobe", "kNN graph",
              (_SEL, _GR), stage="graph", low=0, high=1, low_open=True),
        Param("graph_engine", "choice", "auto", "kNN graph engine: compiled (CPU: faiss "
              "k-means, numba and BLAS over Dask), torch (GEMMs on a GPU; with --device cpu "
              "the same code on the CPU), or auto (torch where torch sees a CUDA GPU and "
              "--device is not cpu, else compiled)", "kNN graph", (_SEL, _GR), stage="graph",
              choices=("auto", "compiled", "torch")),
        Param("memory_limit", "bytes", None, f"memory budget with a unit, e.g. 8GB or 512MB, "
              f"at least {MIN_MEMORY_LIMIT >> 20}MB (default: half the available memory)",
              "kNN graph", (_SEL, _GR), optional=True, low=MIN_MEMORY_LIMIT, metavar="SIZE"),
        Param("seed", "int", 0, "seed for every random choice", "kNN graph",
              (_SEL, _GR, _SY), stage="graph", low=0, high=MAX_SEED),
        # --- message passing (SPEC §1) -------------------------------------------------------
        Param("gamma", "float", 1.0, "reverse kernel width γr (1.0 for DataComp pools, 0.1 "
              "for vision)", "message passing", (_SEL, _MP), stage="reverse", low=0),
        Param("gamma_forward", "float", 1.0, "forward kernel width γf", "message passing",
              (_SEL, _MP), stage="forward", low=0),
        Param("mode", "choice", "sum", "forward pass: s_i + Σ… (sum) or s_i · Σ… (product)",
              "message passing", (_SEL, _MP), stage="forward", choices=("sum", "product")),
        Param("sampling", "choice", "weighted", "reverse update g_v -= exp(-γr·d)·g_u "
              "(weighted) or g_u (absolute)", "message passing", (_SEL, _MP), stage="reverse",
              choices=("weighted", "absolute")),
        Param("greedy", "choice", "exact", "exact greedy, or the DataComp reference script's "
              "standby heuristic (approximate, CPU)", "message passing", (_SEL, _MP),
              stage="reverse", choices=("exact", "standby")),
        Param("buckets", "int", None, "bucketed reverse pass: drop cross-bucket edges, exact "
              "greedy per bucket, exact merge (approximate, CPU)", "message passing",
              (_SEL, _MP), stage="reverse", optional=True, low=1, metavar="N"),
        Param("budget", "int", None, "picks to make (default: all rows)", "message passing",
              (_MP,), optional=True, low=0, metavar="K"),
        # --- selection and outputs -----------------------------------------------------------
        Param("method", "step", "d2", "selection method, as NAME[:OPTION=VALUE,…] (see "
              "`d2scale methods`)", "selection", (_SEL,), metavar="STEP"),
        Param("then", "steps", (), "a further step on the survivors of the previous one, as "
              "NAME[:FRACTION][:OPTION=VALUE,…]; repeat for a chain (the last step's FRACTION, "
              "of the whole pool, is what the run keeps: not with --fraction)", "selection",
              (_SEL,), metavar="STEP"),
        Param("fraction", "fractions", None, "fraction(s) of the pool to keep, e.g. 0.3 or "
              f"0.1,0.2,0.3 (default: {RANKING_FRACTION:g} after a ranking method; a filter "
              "keeps every row it passes)", "selection", (_SEL,), stage="write", optional=True,
              metavar="F[,F…]"),
        Param("out", "path", "d2scale-out", "output directory", "selection", (_SEL,),
              metavar="DIR"),
        Param("graph", "path", None, "reuse a graph directory written by `d2scale graph`",
              "selection", (_SEL,), stage="graph", optional=True, metavar="GDIR"),
        # --- execution -----------------------------------------------------------------------
        Param("device", "choice", "auto", "auto: message passing on CUDA when cupy sees a "
              "GPU and the variant runs there, the kNN graph as --graph-engine picks; cuda: "
              "both on the GPU; cpu: both on the CPU",
              "execution", (_SEL, _GR, _MP),
              choices=DEVICES),
        Param("scheduler", "str", None, "address of a running Dask scheduler, e.g. "
              "tcp://host:8786 (default: a local in-process cluster)", "execution",
              (_SEL, _GR), optional=True, metavar="ADDRESS"),
        Param("scheduler_file", "path", None, "scheduler file of a running Dask cluster "
              "(`dask scheduler --scheduler-file F`)", "execution", (_SEL, _GR),
              optional=True, metavar="F"),
        Param("workers", "int", None, "threads of the local cluster (default: all cores)",
              "execution", (_SEL, _GR), optional=True, low=1, metavar="N"),
        Param("quiet", "bool", False, "no progress output", "execution", (_SEL, _GR, _MP)),
        Param("log_json", "path", None, "append one JSON object per progress event to FILE "
              "('-': to stderr, instead of the progress lines)", "execution", (_SEL, _GR),
              optional=True, metavar="FILE"),
        Param("report", "bool", False, "also write report.html and report/*.png (as "
              "`d2scale report OUT` does)", "selection", (_SEL,)),
        # --- batch (flags of `d2scale batch`, keys of a jobs file) ----------------------------
        Param("concurrency", "int", 1, "buckets that run at once (one Dask cluster serves "
              "them all)", "batch", (), low=1, metavar="N"),
        # --- synth ---------------------------------------------------------------------------
        Param("rows", "int", None, "rows in all", "synthetic pool", (_SY,), low=1),
        Param("shards", "int", 1, "parquet+npz pairs", "synthetic pool", (_SY,), low=1),
        Param("layout", "choice", "f16-compressed", "npz member dtype and zip storage (mixed "
              "cycles through the four by shard)", "synthetic pool", (_SY,),
              choices=(*SYNTH_LAYOUTS, "mixed")),
        Param("embeddings", "choices", SYNTH_MEMBERS, "npz members written, comma-separated "
              "(the others are still generated: values and scores do not depend on this)",
              "synthetic pool", (_SY,), choices=SYNTH_MEMBERS, metavar="M[,M…]"),
    ]
}  # fmt: skip


def shared(name: str, help: str, group: str) -> Param:
    """The table entry ``name`` (its default, choices and range) as another command's
    parameter, with that command's ``help`` (``vision --device``, ``embed --device``)."""
    return replace(PARAMS[name], help=help, group=group, commands=(), stage=None)


def default(name: str) -> Any:
    """The table's default of ``name`` (lists are copied)."""
    value = PARAMS[name].default
    return list(value) if isinstance(value, tuple) else value


def check(name: str, value: Any) -> Any:
    """``value`` checked against the table entry ``name``."""
    return PARAMS[name].check(value)


def for_command(command: str) -> list[Param]:
    """The parameters a command takes, in table order."""
    return [p for p in PARAMS.values() if command in p.commands]


def check_budget(budget: Any, n: int) -> int:
    """``budget`` as an int in [0, n] (None → n), else one sentence."""
    if budget is None:
        return n
    is_int = isinstance(budget, int) or type(budget).__name__.startswith(("int", "uint"))
    if isinstance(budget, bool) or not is_int or not 0 <= int(budget) <= n:
        raise D2ScaleError(
            f"the 'budget' parameter must be an integer in [0, {n}] (the number of nodes); "
            f"got {budget!r}."
        )
    return int(budget)


def parse_fractions(text: str) -> list[float]:
    """``"0.3,0.1,0.2"`` → ``[0.1, 0.2, 0.3]`` (sorted: each fraction has its own files, so
    their order changes nothing); an empty item is refused, duplicates by the check."""
    try:
        return sorted(float(t) for t in text.split(","))
    except ValueError:
        raise D2ScaleError(
            f"the 'fraction' parameter takes numbers separated by commas; got {text!r}."
        ) from None


def _check_fractions(values: Any) -> None:
    if not isinstance(values, (list, tuple)) or not values:
        raise D2ScaleError("the 'fraction' parameter needs at least one number in (0, 1].")
    for f in values:
        ok = isinstance(f, (int, float)) and not isinstance(f, bool)
        if not (ok and math.isfinite(f) and 0 < f <= 1):
            raise D2ScaleError(f"the 'fraction' parameter must be in (0, 1]; got {f!r}.")
    names: dict[str, float] = {}
    for f in values:
        if list(values).count(f) > 1:
            raise D2ScaleError(f"the 'fraction' parameter gives {f:g} twice; give it once.")
        if fraction_label(f) in names and names[fraction_label(f)] != f:
            raise D2ScaleError(
                f"fractions {names[fraction_label(f)]!r} and {f!r} would both be written "
                f"to uids-{fraction_label(f)}.npy; give distinct fractions."
            )
        names[fraction_label(f)] = f


def fraction_label(fraction: float) -> str:
    """The text of a fraction in file names and ``run.json`` (``0.3`` → ``"0.3"``)."""
    return f"{fraction:g}"


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b)\s*$", re.IGNORECASE)
_UNITS = {"k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def parse_bytes(text: str) -> int:
    """``"8GB"`` → 8·10⁹, ``"512MiB"`` → 512·2²⁰. A bare number is refused: no unit can be
    assumed safely (8 would mean 8 bytes)."""
    m = _SIZE.match(text)
    if not m:
        raise D2ScaleError(
            f"the 'memory_limit' parameter must be a size with a unit, e.g. 8GB or 512MB; "
            f"got {text!r}."
        )
    number, unit = float(m.group(1)), m.group(2).lower()
    scale = 2 ** (10 * "kmgt".index(unit[0]) + 10) if "i" in unit else _UNITS[unit[0]]
    return int(number * scale)


@dataclass(frozen=True)
class Step:
    """One step of a selection chain: a method, the fraction of the whole pool it keeps
    (``None``: all it ranks), and its own options (strings, read by the method)."""

    method: str
    fraction: float | None = None
    options: dict = field(default_factory=dict)


def parse_step(text: Any) -> Step:
    """``"semdedup:0.5:eps=0.05,clusters=64"`` → ``Step("semdedup", 0.5, {...})``: the syntax
    only; the method's name and options are checked by :func:`d2scale.methods.check_step`."""
    if not isinstance(text, str) or not text.strip():
        raise D2ScaleError(f"a method step must be NAME[:FRACTION][:OPTION=VALUE,…]; got {text!r}.")
    name, *parts = text.strip().split(":")
    if not name.strip():
        raise D2ScaleError(f"a method step must start with a method name; got {text!r}.")
    fraction, options = None, {}
    for part in parts:
        if "=" in part:
            for item in part.split(","):
                key, eq, value = item.partition("=")
                if not (key.strip() and eq and value.strip()):
                    raise D2ScaleError(f"step {text!r}: options are KEY=VALUE; got {item!r}.")
                key = key.strip().replace("-", "_")
                if key in options:  # the first value would be dropped
                    raise D2ScaleError(f"step {text!r} gives the option {key} twice; keep one.")
                options[key] = value.strip()
        elif fraction is not None:
            raise D2ScaleError(f"step {text!r} gives two fractions; keep one.")
        else:
            fraction = _number(PARAMS["fraction"], part, float)
            _check_fractions([fraction])
    return Step(name, fraction, options)


def budget_for(fraction: float, n: int) -> int:
    """``int(fraction·n)``, robust to float error (0.29·100 is 29, not 28)."""
    return min(n, int(math.floor(fraction * n + 1e-9)))


def param_field(p: Param) -> Any:
    """A dataclass field whose default is ``p``'s (a tuple becomes a fresh list)."""
    value = p.default
    if isinstance(value, tuple):
        return field(default_factory=lambda: list(value))
    return field(default=value)


def _field(name: str) -> Any:
    return param_field(PARAMS[name])


@dataclass(frozen=True)
class GraphConfig:
    """What the kNN graph is built from, resolved once from the table for ``select`` and
    ``d2scale graph`` alike (defaults from :data:`PARAMS`)."""

    embedding_model: str = _field("embedding_model")
    feature_type: str = _field("feature_type")
    n_neighbors: int = _field("n_neighbors")
    index: str = _field("index")
    recall: float = _field("recall")
    graph_engine: str = _field("graph_engine")
    memory_limit: int | None = _field("memory_limit")
    device: str = _field("device")
    seed: int = _field("seed")

    @classmethod
    def of(cls, values: Any) -> GraphConfig:
        """The graph's fields of ``values`` (parameters as attributes, or a dict)."""
        get = values.get if isinstance(values, dict) else lambda name: getattr(values, name)
        return cls(**{f.name: get(f.name) for f in fields(cls)})

    def build_options(self) -> dict:
        """The keyword arguments of :func:`d2scale.graph.build_knn_graph`."""
        d = asdict(self)
        del d["embedding_model"], d["feature_type"]
        return d


@dataclass
class SelectParams:
    """Everything that determines a selection; defaults from :data:`PARAMS`."""

    metadata_dir: str | None = _field("metadata_dir")
    out: str = _field("out")
    fraction: list[float] | None = _field("fraction")
    method: str = _field("method")
    then: list[str] = _field("then")
    embedding_model: str = _field("embedding_model")
    feature_type: str = _field("feature_type")
    score_column: str | None = _field("score_column")
    score_shift: float = _field("score_shift")
    n_neighbors: int = _field("n_neighbors")
    gamma: float = _field("gamma")
    gamma_forward: float = _field("gamma_forward")
    mode: str = _field("mode")
    sampling: str = _field("sampling")
    greedy: str = _field("greedy")
    buckets: int | None = _field("buckets")
    index: str = _field("index")
    recall: float = _field("recall")
    graph_engine: str = _field("graph_engine")
    memory_limit: int | None = _field("memory_limit")
    device: str = _field("device")
    graph: str | None = _field("graph")
    seed: int = _field("seed")
    scheduler: str | None = _field("scheduler")
    scheduler_file: str | None = _field("scheduler_file")
    workers: int | None = _field("workers")
    log_json: str | None = _field("log_json")
    report: bool = _field("report")

    @property
    def graph_config(self) -> GraphConfig:
        return GraphConfig.of(self)

    @property
    def resolved_score_column(self) -> str:
        return self.score_column or f"clip_{self.embedding_model}_similarity_score"

    def validate(self) -> SelectParams:
        for f in fields(self):
            check(f.name, getattr(self, f.name))
        return self

    def to_dict(self) -> dict:
        d = asdict(self)
        d["score_column"] = self.resolved_score_column
        return d

    def stage_params(self, stage: str) -> dict:
        """The parameters whose change invalidates ``stage`` (the stage key's own part)."""
        d = self.to_dict()
        return {p.name: d[p.name] for p in PARAMS.values() if p.stage == stage and p.name in d}
