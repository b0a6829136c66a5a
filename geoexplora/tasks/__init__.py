"""Lightning tasks: domain pre-training (DINOv2, MAE) and supervised fine-tuning (classification,
multi-label, segmentation). Lightning is only the loop; the objectives and heads are plain modules."""
