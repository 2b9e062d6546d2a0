"""Framecast clients: the wire protocol, the Python client and CLI, the web viewer.

Nothing here imports torch or any other package of the project, so a client
installs and runs without the model stack.
"""
