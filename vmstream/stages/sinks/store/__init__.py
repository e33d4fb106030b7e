"""The FAISS video embedding store: index kinds (`index`), the id map (`idmap`) and the
store that ties them together with atomic saves and search (`video_store`)."""
from .idmap import ID_MAP_SCHEMA, IdMap
from .index import KINDS, VectorIndex, gpu_available
from .video_store import SearchHit, VideoStore

__all__ = ["ID_MAP_SCHEMA", "IdMap", "KINDS", "SearchHit", "VectorIndex", "VideoStore", "gpu_available"]
