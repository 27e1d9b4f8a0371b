"""A test helper: the names of the programs JAX compiles while a block runs."""
import contextlib
import logging

import jax


@contextlib.contextmanager
def recorded():
    """Yields a list that receives the name ``f`` of every "Compiling jit(f) ..." record of JAX's
    compilation log while the block runs (``jax_log_compiles`` on meanwhile)."""
    names = []

    class Handler(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith("Compiling jit("):
                names.append(record.getMessage().split("(", 2)[1].split(")")[0])

    handler, logger, was = Handler(), logging.getLogger("jax"), jax.config.jax_log_compiles
    logger.addHandler(handler)
    jax.config.update("jax_log_compiles", True)
    try:
        yield names
    finally:
        jax.config.update("jax_log_compiles", was)
        logger.removeHandler(handler)
