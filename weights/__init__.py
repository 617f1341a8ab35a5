"""Package data: the preset registry (presets.json), the UnivFD head and its licence.

Installed as `aidetect.weights` (see `package-dir` in pyproject.toml); read by aidetect.presets.
"""
