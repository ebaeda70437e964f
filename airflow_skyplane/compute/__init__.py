"""Where relays run and how they are reached.

- :mod:`.netns`: an emulated wide-area network on one Linux machine (regions as network namespaces,
  links shaped with ``tc``), for the local relay backend.
- :mod:`.ssh`: bootstrap of a relay over SSH with paramiko (pinned host keys, private file hand-over,
  detached gateway start), the same for cloud VMs and local relays.
- :mod:`.sshd`: a throwaway OpenSSH server, one per emulated region, so local relays are bootstrapped
  exactly like cloud VMs.

Nothing here imports Airflow; the cloud backends (built on Airflow's EC2, Compute Engine and Azure
compute hooks) will import it lazily.
"""
