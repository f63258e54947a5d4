"""The YAML presets (``mmgen train --config configs/NAME.yaml``). pyproject.toml ships this folder as the package
``mmgen.presets`` (package data, read by :func:`mmgen.config.load_preset`); this file makes it one."""
