"""Offline data sets: IDX and CIFAR readers and the registry of data sets found on this machine."""
from cltk.data.cifar import CifarFormatError, UnsafePickleError, read_cifar10, read_cifar100
from cltk.data.idx import IdxFormatError, read_idx, read_idx_images, read_idx_labels, write_idx
from cltk.data.sources import Dataset, DatasetNotFoundError, available, clear_cache, data_root, known_names, load

__all__ = ["Dataset", "DatasetNotFoundError", "load", "available", "known_names", "data_root", "clear_cache",
           "IdxFormatError", "read_idx", "read_idx_images", "read_idx_labels", "write_idx",
           "CifarFormatError", "UnsafePickleError", "read_cifar10", "read_cifar100"]
