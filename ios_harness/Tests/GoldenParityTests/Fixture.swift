import Foundation
@testable import GoldenParity

/// A small golden file built in code, in the exact shape exporter/xcode/golden.py writes, so each test can change one
/// thing and see it caught.
enum Fixture {
    static let labels = ["cat", "dog", "fox"]
    static let rows: [[Double]] = [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.05, 0.15, 0.8], [0.5, 0.3, 0.2]]

    static func object(rows: [[Double]] = rows) -> [String: Any] {
        let images: [[String: Any]] = rows.enumerated().map { index, row in
            let top = Parity.argmax(row)
            return ["file": String(format: "images/%04d.png", index), "source": "\(labels[top])/\(index).jpg",
                    "label": labels[top], "keras_top_index": top, "keras_top_label": labels[top],
                    "probabilities": row]
        }
        return [
            "schema_version": 1,
            "generator": ["exporter": "0.1.0", "keras": "3.15.0"],
            "source": ["file": "model.keras", "sha256": String(repeating: "ab", count: 32)],
            "artifacts": [["path": "model_fp16.mlpackage", "format": "mlpackage", "variant": "fp16",
                           "sha256": String(repeating: "cd", count: 32)]],
            "labels": labels,
            "preprocessing": ["input_size": [32, 32], "channel_order": "RGB", "scale": [1.0, 1.0, 1.0],
                              "bias": [0.0, 0.0, 0.0], "resize": "stretch", "interpolation": "bilinear",
                              "in_model": true, "version": 1, "notes": "detected in the model: rescaling"],
            "image_format": ["type": "png", "color": "RGB", "bit_depth": 8, "height": 32, "width": 32],
            "tolerances": ["fp32": ["max_abs_prob": 1e-5, "min_top1": NSNull()],
                           "fp16": ["max_abs_prob": 2e-2, "min_top1": 0.99],
                           "int8": ["max_abs_prob": NSNull(), "min_top1": 0.98]],
            "images": images,
        ]
    }

    static func data(rows: [[Double]] = rows, _ change: (inout [String: Any]) -> Void = { _ in }) -> Data {
        var object = object(rows: rows)
        change(&object)
        return try! JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
    }

    static func golden(rows: [[Double]] = rows) throws -> GoldenFile {
        try GoldenFile.decode(data(rows: rows))
    }

    /// Change image `index` of a golden file's JSON object.
    static func changeImage(_ object: inout [String: Any], _ index: Int, _ change: (inout [String: Any]) -> Void) {
        var images = object["images"] as! [[String: Any]]
        change(&images[index])
        object["images"] = images
    }
}
