"""Model files: ``save``/``load``/``load_optimizer`` (``model_file``) over atomic writes (``atomic``)."""

from gpunn.io.atomic import atomic_write
from gpunn.io.model_file import FORMAT_VERSION, ModelFileError, load, load_optimizer, read_optimizer_state, save

__all__ = ["FORMAT_VERSION", "ModelFileError", "atomic_write", "load", "load_optimizer", "read_optimizer_state",
           "save"]
