"""Where relays run and how they are reached: clouds and local processes.

- :mod:`.launcher`: the seam between a transfer's controller and what runs its gateways
  (``GatewayLauncher``, ``GatewayHandle``).
- :mod:`.local`: gateways as processes on this machine, on loopback (the embedded default).
- :mod:`.remote`: gateways on relay machines reached over SSH (a fleet's relay hosts, one transfer's
  launcher on them); :mod:`.ssh`: the bootstrap over SSH with paramiko (pinned host keys, private
  file hand-over, detached gateway start).
- :mod:`.cloud`: a fleet's relay VMs across clouds, through :mod:`.aws` (``EC2Hook``), :mod:`.gcp`
  (``ComputeEngineHook``) and :mod:`.azure` (``AzureComputeHook``), each importing its Airflow hook
  lazily; :mod:`.relays`: what they share.
- :mod:`.fleets`: the fleet records on the worker (find, tear down and sweep fleets by id).

The emulation the tests run these against (the emulated WAN of network namespaces, a throwaway
sshd, emulated relay VMs) lives beside the emulated sky, in :mod:`airflow_skyplane.testing`.
"""
