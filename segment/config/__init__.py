"""The config, from composing to trusting (this file imports nothing).

- ``compose.py``: the config tree, the top-level schema, the YAML's resolvers (registered when it
  is imported), composing outside ``train.py``, the nearest name for a misspelt override.
- ``names.py``: Hydra's override grammar read once, the keys that do not define a run, run
  identities and job folder names, the one walk over a config as data.
- ``schema.py``: every ``_target_`` node checked against its class's signature before anything
  is built.
- ``trust.py``: the allow-list for what a file (a checkpoint, a run folder's saved overrides) may
  ask to be built, applied to the loaded or composed result, deny by default.
"""
