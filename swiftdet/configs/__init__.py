"""Built-in configs. Each module ``<name>.py`` defines ``config() -> Config``; the file name is the
config's name (``swiftdet config mask_rcnn_R_50_FPN_1x``). Modules starting with '_' hold bases."""
