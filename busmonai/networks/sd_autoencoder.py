"""MONAI's ``AutoencoderKL`` in the layout of Stable Diffusion's VAE (the latent-diffusion autoencoder).

CP (MICCAI 2025) and its journal extension (Medical Image Analysis 2025) build on Stable Diffusion
v1.5, whose autoencoder is the KL-regularised autoencoder of Rombach et al. (CVPR 2022, "High-Resolution
Image Synthesis with Latent Diffusion Models"). MONAI's ``AutoencoderKL`` follows the same design
with two differences in layout that make SD's weights not fit it:

- SD's encoder ends in ``2 * latent_channels`` channels (mean and log-variance, "double_z"), then
  one 1x1 ``quant_conv`` over both; MONAI's encoder ends in ``latent_channels`` channels followed
  by two separate ``latent -> latent`` 1x1 convolutions (``quant_conv_mu``, ``quant_conv_log_sigma``).
- SD's decoder has ``num_res_blocks + 1`` residual blocks per level, MONAI's ``num_res_blocks``.
- SD applies SiLU between the last GroupNorm and the output convolution of the encoder and of the
  decoder; MONAI's ``Encoder`` / ``Decoder`` go from the GroupNorm straight to the convolution.

:class:`LDMAutoencoderKL` is MONAI's ``AutoencoderKL`` with the encoder and decoder rebuilt (from
MONAI's own ``Encoder`` / ``Decoder``) in SD's layout, and its two 1x1 convolutions mapping the
``2 * latent_channels`` encoder output to the mean and the log-variance, and a parameter-free
``nn.SiLU`` inserted before each output convolution (so that convolution's index in ``blocks`` is
one higher than in MONAI's). Everything else (forward,
``encode``, ``decode``, sampling, ``latent_channels``) is MONAI's, so the rest of the pipeline and
:mod:`busmonai.networks.described` treat it as any ``AutoencoderKL``.
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.networks.blocks import Convolution
from monai.networks.nets import AutoencoderKL
from monai.networks.nets.autoencoderkl import Decoder, Encoder
from monai.utils import ensure_tuple_rep
from torch import nn

__all__ = ["LDMAutoencoderKL"]


class LDMAutoencoderKL(AutoencoderKL):
    """``AutoencoderKL`` with SD's double-z encoder output, ``num_res_blocks + 1`` decoder blocks and
    SiLU before the output convolutions.

    Takes the arguments of MONAI's ``AutoencoderKL`` (see there) with the same meaning;
    ``num_res_blocks`` is the encoder's count per level (diffusers' ``layers_per_block``).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int = 1,
        out_channels: int = 1,
        num_res_blocks: Sequence[int] | int = (2, 2, 2, 2),
        channels: Sequence[int] = (128, 256, 512, 512),
        attention_levels: Sequence[bool] = (False, False, False, False),
        latent_channels: int = 4,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-6,
        with_encoder_nonlocal_attn: bool = True,
        with_decoder_nonlocal_attn: bool = True,
        use_checkpoint: bool = False,
        use_convtranspose: bool = False,
        include_fc: bool = True,
        use_combined_linear: bool = False,
        use_flash_attention: bool = False,
    ) -> None:
        super().__init__(
            spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
            num_res_blocks=num_res_blocks, channels=channels, attention_levels=attention_levels,
            latent_channels=latent_channels, norm_num_groups=norm_num_groups, norm_eps=norm_eps,
            with_encoder_nonlocal_attn=with_encoder_nonlocal_attn, with_decoder_nonlocal_attn=with_decoder_nonlocal_attn,
            use_checkpoint=use_checkpoint, use_convtranspose=use_convtranspose, include_fc=include_fc,
            use_combined_linear=use_combined_linear, use_flash_attention=use_flash_attention,
        )
        blocks = list(ensure_tuple_rep(num_res_blocks, len(channels)) if isinstance(num_res_blocks, int)
                      else num_res_blocks)
        common = {
            "spatial_dims": spatial_dims, "channels": channels, "norm_num_groups": norm_num_groups,
            "norm_eps": norm_eps, "attention_levels": attention_levels, "include_fc": include_fc,
            "use_combined_linear": use_combined_linear, "use_flash_attention": use_flash_attention,
        }
        self.encoder = Encoder(in_channels=in_channels, out_channels=2 * latent_channels, num_res_blocks=blocks,
                               with_nonlocal_attn=with_encoder_nonlocal_attn, **common)
        self.decoder = Decoder(in_channels=latent_channels, out_channels=out_channels,
                               num_res_blocks=[n + 1 for n in blocks], with_nonlocal_attn=with_decoder_nonlocal_attn,
                               use_convtranspose=use_convtranspose, **common)
        for coder in (self.encoder, self.decoder):
            coder.blocks.insert(len(coder.blocks) - 1, nn.SiLU())  # GroupNorm, SiLU, conv_out
        for name in ("quant_conv_mu", "quant_conv_log_sigma"):
            setattr(self, name, Convolution(spatial_dims=spatial_dims, in_channels=2 * latent_channels,
                                            out_channels=latent_channels, strides=1, kernel_size=1, padding=0,
                                            conv_only=True))
