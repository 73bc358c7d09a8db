"""Config keys of video instance segmentation (added on top of add_maskformer2_config)."""

# Values of MODEL.MASK_FORMER.VIDEO_TARGET_CLASS, see add_maskformer2_video_config.
TARGET_CLASS_RULES = ("last_frame", "any_frame")


def add_maskformer2_video_config(cfg):
    # Clip sampling for training: a reference frame plus SAMPLING_FRAME_NUM - 1 frames drawn within
    # SAMPLING_FRAME_RANGE frames of it (in temporal order unless SAMPLING_FRAME_SHUFFLE).
    cfg.INPUT.SAMPLING_FRAME_NUM = 2
    cfg.INPUT.SAMPLING_FRAME_RANGE = 20
    cfg.INPUT.SAMPLING_FRAME_SHUFFLE = False
    # Extra clip-consistent augmentations: any of "brightness", "contrast", "saturation", "rotation".
    cfg.INPUT.AUGMENTATIONS = []

    # Class of a training target (one per track of the clip).
    # "last_frame" (upstream's rule, the default so published training recipes reproduce): the
    #   class annotated in the clip's last frame; a track absent from the last frame has no class
    #   there and becomes a "no object" target for the classification loss (its masks are still
    #   supervised).
    # "any_frame": the class annotated in any frame where the track is present.
    cfg.MODEL.MASK_FORMER.VIDEO_TARGET_CLASS = "last_frame"

    # Inference refuses (with a clear error, before any work) videos with more frames than this;
    # 0 = no limit. Memory grows linearly with the number of frames.
    cfg.MODEL.MASK_FORMER.TEST.MAX_NUM_FRAMES = 0
    # Frames run through the backbone and pixel decoder at once at inference (0 = all frames of the
    # video). The results are the same for any value: these stages treat frames independently; a
    # small value lowers the peak memory of long videos.
    cfg.MODEL.MASK_FORMER.TEST.FRAMES_PER_BATCH = 0


__all__ = ["add_maskformer2_video_config", "TARGET_CLASS_RULES"]
