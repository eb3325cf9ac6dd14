"""Bundled example models, trained at build time on scikit-learn's digits and exported like any other."""
