"""The configs shipped with the package: pyproject.toml installs this folder as
repro.configs, so that repro.config.packaged_config finds them in any install. This file
makes it a regular package, which an editable install can map onto configs/ (a
namespace package inside repro it cannot)."""
