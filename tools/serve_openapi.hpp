// The OpenAPI 3.0 description of `ftune serve`'s endpoints, answered at GET /openapi.json
// (as Text Embeddings Inference answers its own there). Kept beside serve_cmd.hpp, which
// implements what it describes; test_serve_http checks that it parses and names every path.
#pragma once

namespace cli {

// The OpenAPI document, JSON.
inline constexpr const char* serve_openapi = R"json({
  "openapi": "3.0.3",
  "info": {
    "title": "ftune serve",
    "description": "A fine-tuned sequence classifier (POST /predict), a sentence-embedding encoder (POST /embed), a token classifier (POST /token-classification) a question-answering model (POST /question-answering) or a language model (POST /v1/chat/completions, OpenAI's API) over HTTP, with Text Embeddings Inference's endpoints and JSON and, for token classification and question answering, the JSON of Transformers' pipelines. Concurrent requests are batched dynamically; every answer names the model version that computed it (X-Model-Version).",
    "license": {"name": "see the ftune repository"},
    "version": "0.1.0"
  },
  "paths": {
    "/predict": {
      "post": {
        "summary": "Class probabilities of one input, a pair, or a batch",
        "requestBody": {
          "required": true,
          "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}}
        },
        "responses": {
          "200": {
            "description": "Every class with its probability, highest first; a list of those for a batch",
            "headers": {"X-Model-Version": {"schema": {"type": "string"}, "description": "the repository version that answered"}},
            "content": {"application/json": {"schema": {"oneOf": [
              {"$ref": "#/components/schemas/Scores"},
              {"type": "array", "items": {"$ref": "#/components/schemas/Scores"}}
            ]}}}
          },
          "413": {"description": "more inputs than --max-client-batch, a body over --max-bytes, or (/predict, /embed) an input over the maximum length with truncation off", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "422": {"description": "a body that is not a valid request", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "400": {"description": "the model in service is an embedding model", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "424": {"description": "the forward failed", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "503": {"description": "overloaded: the queue is full or the input waited past --timeout-ms (Retry-After: 1)", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        }
      }
    },
    "/embed": {
      "post": {
        "summary": "Sentence embeddings of one text or a batch (an embedding model: a BertModel directory, pooled as its sentence-transformers modules say)",
        "requestBody": {
          "required": true,
          "content": {"application/json": {"schema": {"$ref": "#/components/schemas/EmbedRequest"}}}
        },
        "responses": {
          "200": {
            "description": "One vector per input, in order (a list of one for a single text)",
            "headers": {"X-Model-Version": {"schema": {"type": "string"}, "description": "the repository version that answered"}},
            "content": {"application/json": {"schema": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}}}
          },
          "400": {"description": "the model in service is a classifier", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "413": {"description": "more inputs than --max-client-batch, a body over --max-bytes, or (/predict, /embed) an input over the maximum length with truncation off", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "422": {"description": "a body that is not a valid request", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "424": {"description": "the forward failed", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "503": {"description": "overloaded: the queue is full or the input waited past --timeout-ms (Retry-After: 1)", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        }
      }
    },
    "/token-classification": {
      "post": {
        "summary": "ftune's extension: the entities of one text or a batch (a token classifier), as Transformers' token-classification pipeline",
        "requestBody": {
          "required": true,
          "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TokenRequest"}}}
        },
        "responses": {
          "200": {
            "description": "The entities of the text (a list of those lists for a batch)",
            "headers": {"X-Model-Version": {"schema": {"type": "string"}, "description": "the repository version that answered"}},
            "content": {"application/json": {"schema": {"oneOf": [
              {"$ref": "#/components/schemas/Entities"},
              {"type": "array", "items": {"$ref": "#/components/schemas/Entities"}}
            ]}}}
          },
          "400": {"description": "the model in service is not a token classifier", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "413": {"description": "more inputs than --max-client-batch, a body over --max-bytes, or (/predict, /embed) an input over the maximum length with truncation off", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "422": {"description": "a body that is not a valid request", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "424": {"description": "the forward failed", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "503": {"description": "overloaded (Retry-After: 1)", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        }
      }
    },
    "/question-answering": {
      "post": {
        "summary": "ftune's extension: answers taken from a context (a question-answering model), as Transformers' question-answering pipeline",
        "requestBody": {
          "required": true,
          "content": {"application/json": {"schema": {"$ref": "#/components/schemas/QARequest"}}}
        },
        "responses": {
          "200": {
            "description": "Per question the best answer (null: none), or the top_k best when top_k > 1; a list of those for a batch",
            "headers": {"X-Model-Version": {"schema": {"type": "string"}, "description": "the repository version that answered"}},
            "content": {"application/json": {"schema": {"oneOf": [
              {"$ref": "#/components/schemas/Answer"},
              {"type": "array", "items": {"oneOf": [{"$ref": "#/components/schemas/Answer"}, {"type": "array", "items": {"$ref": "#/components/schemas/Answer"}}]}}
            ]}}}
          },
          "400": {"description": "the model in service is not a question-answering model", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "413": {"description": "more inputs than --max-client-batch, a body over --max-bytes, or (/predict, /embed) an input over the maximum length with truncation off", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "422": {"description": "a body that is not a valid request", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "424": {"description": "the forward failed", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "503": {"description": "overloaded (Retry-After: 1)", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        }
      }
    },
    "/v1/chat/completions": {
      "post": {
        "summary": "OpenAI's chat completions (a Llama or GPT-2 language model with a chat template): the assistant's reply, whole or streamed as server-sent events",
        "requestBody": {
          "required": true,
          "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ChatRequest"}}}
        },
        "responses": {
          "200": {
            "description": "A chat.completion object; with stream: text/event-stream of chat.completion.chunk objects ('data: {...}' lines), then 'data: [DONE]'",
            "headers": {"X-Model-Version": {"schema": {"type": "string"}, "description": "the repository version that answered"}},
            "content": {
              "application/json": {"schema": {"$ref": "#/components/schemas/ChatCompletion"}},
              "text/event-stream": {"schema": {"type": "string"}}
            }
          },
          "400": {"description": "a body that is not a valid request, an option ftune does not implement, a conversation longer than the model's context, or another model in service (OpenAI's error shape)", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OpenAIError"}}}},
          "503": {"description": "more than --max-queue conversations running or waiting (Retry-After: 1)", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OpenAIError"}}}}
        }
      }
    },
    "/info": {
      "get": {
        "summary": "The model in service and the server's limits",
        "responses": {"200": {"description": "Text Embeddings Inference's info fields, and model_version", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Info"}}}}}
      }
    },
    "/health": {
      "get": {
        "summary": "Whether a model is in service",
        "responses": {"200": {"description": "serving"}, "503": {"description": "no model in service"}}
      }
    },
    "/metrics": {
      "get": {
        "summary": "Prometheus metrics: requests, latency, batch sizes, queue, rejections, model version, reloads",
        "responses": {"200": {"description": "Prometheus text format 0.0.4", "content": {"text/plain": {"schema": {"type": "string"}}}}}
      }
    },
    "/openapi.json": {
      "get": {
        "summary": "This description",
        "responses": {"200": {"description": "OpenAPI 3.0", "content": {"application/json": {"schema": {"type": "object"}}}}}
      }
    }
  },
  "components": {
    "schemas": {
      "Input": {
        "description": "a text, [text], or a pair [text, text]",
        "oneOf": [
          {"type": "string"},
          {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 2}
        ]
      },
      "PredictRequest": {
        "type": "object",
        "required": ["inputs"],
        "properties": {
          "inputs": {
            "description": "a text; two strings: one pair; a list of inputs: a batch",
            "oneOf": [
              {"type": "string"},
              {"type": "array", "items": {"$ref": "#/components/schemas/Input"}}
            ]
          },
          "raw_scores": {"type": "boolean", "default": false, "description": "true: the logits instead of the probabilities"},
          "adapter": {"type": "string", "description": "ftune's extension: the task (a LoRA adapter given with --adapter NAME=DIR) that answers; required on a server with adapters"},
          "truncate": {"type": "boolean", "description": "true: over-long inputs are cut; false: refused with 413; absent: the server's --auto-truncate (default true)"},
          "truncation_direction": {"type": "string", "enum": ["right", "Right"], "description": "inputs are cut at their end; left is refused (422)"}
        }
      },
      "EmbedRequest": {
        "type": "object",
        "required": ["inputs"],
        "properties": {
          "inputs": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
          "normalize": {"type": "boolean", "default": true, "description": "unit vectors (L2); false: the pooled hidden states as they are"},
          "truncate": {"type": "boolean", "description": "true: over-long inputs are cut; false: refused with 413; absent: the server's --auto-truncate (default true)"},
          "truncation_direction": {"type": "string", "enum": ["right", "Right"], "description": "inputs are cut at their end; left is refused (422)"}
        }
      },
      "TokenRequest": {
        "type": "object",
        "required": ["inputs"],
        "properties": {
          "inputs": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
          "aggregation_strategy": {"type": "string", "enum": ["first", "none"], "default": "first", "description": "first: entities of whole words (each word labelled by its first piece), neighbouring words of one type joined; none: every word not tagged O"}
        }
      },
      "Entities": {
        "type": "array",
        "items": {
          "type": "object",
          "properties": {
            "entity_group": {"type": "string", "description": "the type (first)"},
            "entity": {"type": "string", "description": "the word's label (none)"},
            "score": {"type": "number"},
            "word": {"type": "string", "description": "the text's own span"},
            "start": {"type": "integer", "description": "first character (code point)"},
            "end": {"type": "integer", "description": "one past the last character"}
          }
        }
      },
      "QARequest": {
        "type": "object",
        "required": ["inputs"],
        "properties": {
          "inputs": {"oneOf": [{"$ref": "#/components/schemas/Question"}, {"type": "array", "items": {"$ref": "#/components/schemas/Question"}}]},
          "top_k": {"type": "integer", "minimum": 1, "maximum": 100, "default": 1},
          "max_answer_length": {"type": "integer", "minimum": 1, "maximum": 512, "default": 15, "description": "in tokens"}
        }
      },
      "Question": {
        "type": "object",
        "required": ["question", "context"],
        "properties": {"question": {"type": "string"}, "context": {"type": "string"}}
      },
      "Answer": {
        "type": "object",
        "nullable": true,
        "properties": {
          "score": {"type": "number"},
          "start": {"type": "integer", "description": "first character of the answer in the context (code point)"},
          "end": {"type": "integer"},
          "answer": {"type": "string"}
        }
      },
      "ChatRequest": {
        "type": "object",
        "required": ["messages"],
        "properties": {
          "model": {"type": "string", "description": "echoed in the answer"},
          "messages": {"type": "array", "minItems": 1, "items": {"type": "object", "required": ["role", "content"], "properties": {"role": {"type": "string"}, "content": {"type": "string"}}}},
          "max_tokens": {"type": "integer", "minimum": 1, "description": "new tokens at most (also max_completion_tokens; default --max-tokens, 256)"},
          "temperature": {"type": "number", "minimum": 0, "maximum": 2, "default": 1, "description": "0: greedy"},
          "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 1},
          "stop": {"oneOf": [{"type": "string"}, {"type": "array", "maxItems": 4, "items": {"type": "string"}}]},
          "seed": {"type": "integer"},
          "stream": {"type": "boolean", "default": false},
          "n": {"type": "integer", "enum": [1]}
        }
      },
      "ChatCompletion": {
        "type": "object",
        "properties": {
          "id": {"type": "string"},
          "object": {"type": "string", "enum": ["chat.completion"]},
          "created": {"type": "integer"},
          "model": {"type": "string"},
          "choices": {"type": "array", "items": {"type": "object", "properties": {
            "index": {"type": "integer"},
            "message": {"type": "object", "properties": {"role": {"type": "string"}, "content": {"type": "string"}}},
            "finish_reason": {"type": "string", "enum": ["stop", "length"]}
          }}},
          "usage": {"type": "object", "properties": {"prompt_tokens": {"type": "integer"}, "completion_tokens": {"type": "integer"}, "total_tokens": {"type": "integer"}}}
        }
      },
      "OpenAIError": {
        "type": "object",
        "properties": {"error": {"type": "object", "properties": {"message": {"type": "string"}, "type": {"type": "string"}, "param": {"nullable": true}, "code": {"nullable": true}}}}
      },
      "Scores": {
        "type": "array",
        "items": {
          "type": "object",
          "required": ["label", "score"],
          "properties": {"label": {"type": "string"}, "score": {"type": "number"}}
        }
      },
      "Error": {
        "type": "object",
        "required": ["error", "error_type"],
        "properties": {
          "error": {"type": "string"},
          "error_type": {"type": "string", "enum": ["Validation", "Empty", "Overloaded", "Backend"]}
        }
      },
      "Info": {
        "type": "object",
        "properties": {
          "model_id": {"type": "string"},
          "model_sha": {"type": "string", "nullable": true},
          "model_version": {"type": "string"},
          "model_dtype": {"type": "string", "enum": ["float32", "bfloat16"]},
          "model_type": {"type": "object", "properties": {
            "classifier": {"type": "object", "properties": {
              "id2label": {"type": "object", "additionalProperties": {"type": "string"}},
              "label2id": {"type": "object", "additionalProperties": {"type": "integer"}},
              "adapters": {"type": "object", "description": "ftune's extension, with --adapter: each task's id2label", "additionalProperties": {"type": "object"}}
            }},
            "token_classifier": {"type": "object", "description": "ftune's extension", "properties": {
              "id2label": {"type": "object", "additionalProperties": {"type": "string"}},
              "label2id": {"type": "object", "additionalProperties": {"type": "integer"}}
            }},
            "question_answering": {"type": "object", "description": "ftune's extension"},
            "generation": {"type": "object", "description": "ftune's extension", "properties": {"max_positions": {"type": "integer"}}},
            "embedding": {"type": "object", "properties": {
              "pooling": {"type": "string", "description": "sentence-transformers' mode names, joined by + when concatenated"},
              "dimension": {"type": "integer"},
              "normalize_by_default": {"type": "boolean"}
            }}
          }},
          "max_concurrent_requests": {"type": "integer"},
          "max_input_length": {"type": "integer"},
          "max_batch_tokens": {"type": "integer"},
          "max_batch_requests": {"type": "integer"},
          "max_client_batch_size": {"type": "integer"},
          "tokenization_workers": {"type": "integer"},
          "version": {"type": "string"}
        }
      }
    }
  }
})json";

}  // namespace cli
