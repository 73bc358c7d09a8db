from . import datasets  # noqa: F401  (registers the builtin datasets)
from . import synthetic  # noqa: F401  (registers synthetic_{panoptic,sem_seg,instance}_{train,val})
