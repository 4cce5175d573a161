"""vigil.models: model families behind one interface (``registry``), their spec and files.

Each family is a folder (``conv_ae``, ``convlstm``, ...) whose ``FAMILY`` record names its
config, network and training plan; networks return the typed ``AnomalyOutput``. Nothing here
imports torch at package import: the modules below are imported on first use.
"""

from vigil.models.registry import Family, UnknownFamilyError, get_family, known_families

__all__ = ["Family", "UnknownFamilyError", "get_family", "known_families"]
