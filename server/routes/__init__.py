"""One router per feature: stream (WebSocket), videos (jobs), models, health."""
