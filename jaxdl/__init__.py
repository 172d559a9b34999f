"""jaxdl: the models of an introductory deep-learning course, trained by one JAX loop."""

__version__ = "0.1.0"
