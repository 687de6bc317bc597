"""Videos: the frame rule that lets an image reward score a video (:mod:`dance.video.frames`) and
MP4 files written and read with PyAV (:mod:`dance.video.mp4`)."""
