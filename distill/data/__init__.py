"""Training data: the procedural Shapes world (`shapes`) and folders of real videos
(`video_folder`)."""
