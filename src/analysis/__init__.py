"""The paper's analyses (§4.3–4.5), one module per figure; ``src/analyze.py`` is their command line."""
