"""Hosts for worlds that span machines: namespaces as hosts, the inventory, the host agent.

Issue 15's foundation.  :mod:`.netns` builds network namespaces that stand in for hosts on one
machine (CI); the world runner does not place ranks on hosts yet.
"""
