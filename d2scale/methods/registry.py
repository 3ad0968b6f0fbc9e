"""Names of the selection methods and the modules that implement them (a leaf module, so
that the parameter table can offer the names as choices)."""

METHODS: dict[str, str] = {
    "d2": "d2scale.methods.d2",
}
