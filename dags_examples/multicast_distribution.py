"""Distribution of one model checkpoint to three regions in one task, one plan and one fleet.

Triggered by hand (or by an upstream training DAG) with the checkpoint's prefix as a param:
``airflow dags trigger multicast_distribution -c '{"checkpoint": "ckpt-000100"}'``. The task waits in
the triggerer while the relays stream (``deferrable=True``), so a multi-hour copy holds no worker
slot; a ``SkyplaneReplicaSensor`` then confirms every replica holds every file with the same size
and checksum. The URIs default to buckets of the emulated sky; set ``SKYPLANE_EXAMPLE_MODELS`` and
``SKYPLANE_EXAMPLE_SERVING_*`` (or edit them) to use real ones.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG, Asset, Param

from airflow_skyplane.operators.transfer import SkyplaneTransferOperator
from airflow_skyplane.sensors.transfer import SkyplaneReplicaSensor

MODELS = os.environ.get("SKYPLANE_EXAMPLE_MODELS", "s3://skyplane-example-models/checkpoints")
REPLICAS = {
    "gcp:europe-west4-a": os.environ.get(
        "SKYPLANE_EXAMPLE_SERVING_EU", "gs://skyplane-example-serving-eu/models"
    ),
    "azure:westeurope": os.environ.get("SKYPLANE_EXAMPLE_SERVING_AZ", "az://skyplane-example-serving/models"),
    "aws:ap-northeast-1": os.environ.get(
        "SKYPLANE_EXAMPLE_SERVING_AP", "s3://skyplane-example-serving-ap/models"
    ),
}

with DAG(
    dag_id="multicast_distribution",
    schedule=None,
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    params={"checkpoint": Param("ckpt-000100", type="string", pattern=r"^[A-Za-z0-9._-]+$")},
    tags=["skyplane", "example"],
    doc_md=__doc__,
):
    distribute = SkyplaneTransferOperator(
        task_id="distribute",
        source=MODELS + "/{{ params.checkpoint }}/",
        destination=[uri + "/{{ params.checkpoint }}/" for uri in REPLICAS.values()],
        destination_region=list(REPLICAS),
        deferrable=True,
        poll_interval=2,
        outlets=[Asset(uri.replace("az://", "abfs://") + "/") for uri in REPLICAS.values()],
    )
    for region, uri in REPLICAS.items():
        distribute >> SkyplaneReplicaSensor(
            task_id=f"check_{region.replace(':', '_').replace('-', '_')}",
            source=MODELS + "/{{ params.checkpoint }}/",
            destination=uri + "/{{ params.checkpoint }}/",
            poke_interval=5,
            timeout=600,
            mode="reschedule",
        )
