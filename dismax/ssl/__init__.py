"""Self-supervised masked-denoising generators (Liu et al.; spec ``ssl_gan.md``): the equivariant
``backbone``, the ``corruption`` (species masking, positional noise), the structure ``data`` reader,
the shared ``steps``, pre-training (``pretrain``, model ``ssl_pretrain``)."""
