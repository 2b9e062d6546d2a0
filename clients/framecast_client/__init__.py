"""Python client for Framecast: live streams, prompt switching, clip jobs.

Depends on the wire protocol (`clients.protocol`) and nothing else of the project,
so it installs without torch.
"""

from clients.framecast_client.client import FramecastClient
from clients.framecast_client.config import API_KEY_ENV, URL_ENV, Endpoint, resolve_endpoint
from clients.framecast_client.decode import Frame
from clients.framecast_client.errors import (ConnectionLost, ExitCode, FramecastError, JobFailed, ProtocolError,
                                             RequestRejected, ServerFull, ServerUnavailable, Unauthorized)
from clients.framecast_client.stream import MediaChunk, PromptSwitch, Stream
from clients.framecast_client.sync import FramecastClientSync, SyncStream

__all__ = [
    "API_KEY_ENV", "URL_ENV", "ConnectionLost", "Endpoint", "ExitCode", "FramecastClient", "FramecastClientSync",
    "FramecastError", "Frame", "JobFailed", "MediaChunk", "PromptSwitch", "ProtocolError", "RequestRejected",
    "ServerFull", "ServerUnavailable", "Stream", "SyncStream", "Unauthorized", "resolve_endpoint",
]
