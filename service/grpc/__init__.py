"""The gRPC front: KServe V2 (inference.GRPCInferenceService) and TF Serving (PredictionService, ModelService).

Each service is one more dialect on the one inference path: a decoder to InferRequest and an encoder of
InferResponse, run through the same validate() and Engine.infer as the HTTP routes. Like service.api, this
package knows engine, inference, model, the codecs and errors, never the registry, batcher or runtimes.
"""
