"""The relay daemon's library; imports no Airflow.

A relay VM runs this package with only the ``gateway`` extra installed, so nothing here may import
Airflow, directly or through another module of the provider. ``protocol`` holds the wire format of the
frames gateways exchange (chunks, batches, acknowledgements) and their compression and end-to-end
encryption; ``tls`` holds the per-fleet certificate authority and the mutual-TLS contexts with which
gateways authenticate each other. See ``docs/wire-protocol.md``.
"""
