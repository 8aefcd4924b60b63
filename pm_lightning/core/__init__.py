"""Cross-cutting pieces: where the project's files are, optional extras, the private APIs we lean on."""
