"""Offline checks of the deployment files, and compose_env for the compose-shaped system test."""
