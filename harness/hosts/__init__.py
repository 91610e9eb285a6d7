"""Hosts for worlds that span machines: namespaces as hosts, the inventory, the host agent.

Issue 15's foundation.  :mod:`.netns` builds network namespaces that stand in for hosts on one
machine (CI); :mod:`..launch.remote` runs a world's ranks on hosts through their agents.
"""
