"""Networks: SCMG generator and discriminator, text encoders, LoRA wiring."""
