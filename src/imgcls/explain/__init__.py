"""Why a model decided: Grad-CAM and integrated-gradients heatmaps (Captum), the layer they
weigh chosen for every model (``target_layer``), and ``imgcls explain`` (``explainer``)."""
