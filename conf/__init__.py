"""Hydra configs of the decode and bench apps (installed as focuslib.conf: a package, so Hydra finds it by module)."""
