"""Storage layer: one small ``ObjectStore`` interface over S3, GCS, Azure Blob and local files.

The adapters (``s3``, ``gcs``, ``azure_blob``, ``local``) wrap an SDK client and import no Airflow, so
relays can use them without Airflow installed. Each defines its store kind (:mod:`.kinds`): inside a
task, :func:`~airflow_skyplane.hooks.storage.open_store` builds the adapter through the kind from a URI
and an Airflow connection (importing the provider's hook then); on a relay, the kind opens it from a
store spec.
"""

from airflow_skyplane.storage.base import Checksum, MultipartUpload, ObjectInfo, ObjectStore, PartInfo
from airflow_skyplane.storage.uri import StorageURI, parse_uri

__all__ = ["Checksum", "MultipartUpload", "ObjectInfo", "ObjectStore", "PartInfo", "StorageURI", "parse_uri"]
