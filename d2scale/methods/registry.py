"""Names of the selection methods and the modules that implement them (a leaf module, so
that the parameter table can offer the names as choices), and which of them are filters."""

METHODS: dict[str, str] = {
    "d2": "d2scale.methods.d2",
    "d2-reference": "d2scale.methods.d2_reference",
    "random": "d2scale.methods.random",
    "clip-score": "d2scale.methods.clip_score",
    "basic": "d2scale.methods.basic",
    "caption": "d2scale.methods.caption",
    "laion2b": "d2scale.methods.laion2b",
    "text-based": "d2scale.methods.text_based",
    "image-clustering": "d2scale.methods.image_clustering",
    "semdedup": "d2scale.methods.semdedup",
}

# Rule-based methods: they pass or drop rows and rank none. Alone or last without a
# fraction they keep every row they pass; with one, the best by the order they state.
FILTERS = frozenset({"basic", "caption", "laion2b", "text-based", "image-clustering", "semdedup"})


def is_filter(method: str, options: dict) -> bool:
    """Whether a step is a filter: a method of :data:`FILTERS`, or ``clip-score`` with a
    ``threshold`` (DataComp's threshold baselines keep every row at or above it)."""
    return method in FILTERS or (method == "clip-score" and "threshold" in options)
