"""The audio recipe (loaded by vqkit.runs.load_recipe as a package)."""
