"""The pieces of ``benchmarks/peers.py``, one job per module.

* :mod:`peerbench.workloads`: the three workloads, their sizing to a run budget, seeding the source;
* :mod:`peerbench.testbed`: the emulated WAN, the stores inside it, the plans, the emulators'
  ceilings, and the digests that check what arrived;
* :mod:`peerbench.contenders`: how each contender is run (ours, Airflow's operators, rclone with its
  defaults and with the flags the workload calls for) and what each is predicted to need;
* :mod:`peerbench.report`: the targets, the table and the chart.
"""
