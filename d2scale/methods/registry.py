"""Names of the selection methods and the modules that implement them (a leaf module, so
that the parameter table can offer the names as choices)."""

METHODS: dict[str, str] = {
    "d2": "d2scale.methods.d2",
    "d2-reference": "d2scale.methods.d2_reference",
    "random": "d2scale.methods.random",
    "clip-score": "d2scale.methods.clip_score",
    "basic": "d2scale.methods.basic",
    "image-clustering": "d2scale.methods.image_clustering",
    "semdedup": "d2scale.methods.semdedup",
}
