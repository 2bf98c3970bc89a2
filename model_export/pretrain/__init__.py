"""Self-supervised pretraining: FCMAE for the ConvNeXt V2 image encoder, CLIP/SimCSE for the text encoder."""
