"""Storage layer: one small ``ObjectStore`` interface over S3, GCS, Azure Blob and local files.

The adapters (``s3``, ``gcs``, ``azure_blob``, ``local``) import no Airflow and wrap an SDK client, so
relays can use them without Airflow installed. :func:`~airflow_skyplane.hooks.storage.open_store`
builds them from a URI and Airflow connections inside a task.
"""

from airflow_skyplane.storage.base import Checksum, MultipartUpload, ObjectInfo, ObjectStore, PartInfo
from airflow_skyplane.storage.uri import StorageURI, parse_uri

__all__ = ["Checksum", "MultipartUpload", "ObjectInfo", "ObjectStore", "PartInfo", "StorageURI", "parse_uri"]
