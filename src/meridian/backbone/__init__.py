"""The NATS JetStream adapter: topology, the server launcher, connections and probes.

Foreign exceptions from nats-py are translated into Meridian errors here, once.
"""
