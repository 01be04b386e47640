"""Writing a synthetic world to disk in the formats nanovlm reads back (csv, coco, wds)."""
