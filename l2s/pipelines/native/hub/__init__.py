"""Files for diffusers' ``custom_pipeline=`` (one pipeline class per file, as diffusers requires);
:func:`l2s.pipelines.native.custom_pipeline_file` names them."""
