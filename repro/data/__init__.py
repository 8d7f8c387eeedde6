"""Reading the WebDataset shards for training and evaluation, one job a module:

shards  the manifest's shard list of a split (`split_shards`)
order   which samples each rank and loader worker reads, in which order, with which
        crops: the exact-once epoch contract (`EpochPlan`)
decode  JPEG bytes -> uint8 pixels: on the host (libjpeg-turbo) or the GPU (nvJPEG)
batch   a batch: its images (crops, JPEG bytes or both), labels and crops (`Batch`)
loader  the DataLoader over a plan, and its batches on the device (`device_loader`)
"""
