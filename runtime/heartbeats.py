"""How often a node tells the GCS it is alive, and how long a silent node is taken for dead.

Apart from the node (cluster.py) so that the `ringwatch node start` flags can
show these defaults without importing the node's gRPC and Redis clients.
"""

HEARTBEAT_S = 1.0
HEARTBEAT_TIMEOUT_S = 5.0
