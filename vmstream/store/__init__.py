"""The video embedding store (FAISS, or Milvus: `milvus_store`, chosen in `backends`): index kinds (`index`), the id map (`idmap`), the
checksummed files on disk (`files`), search (`searching`), the store that ties them
together (`video_store`), and its rebuild from a run's Parquet results (`repair`)."""

from .backends import BACKENDS, open_store, store_backend
from .files import StoreCorruptError
from .idmap import ID_MAP_SCHEMA, IdMap
from .index import KINDS, VectorIndex, gpu_available
from .searching import SearchHit
from .video_store import VideoStore

__all__ = [
    "BACKENDS",
    "open_store",
    "store_backend",
    "ID_MAP_SCHEMA",
    "IdMap",
    "KINDS",
    "SearchHit",
    "StoreCorruptError",
    "VectorIndex",
    "VideoStore",
    "gpu_available",
]
